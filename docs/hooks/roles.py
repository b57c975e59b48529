"""A Griffe extension: the site renders the Sphinx roles that ppgen's docstrings are written in.

ppgen's docstrings are Google style with reStructuredText roles (as Pyro's and torch's are):
``:math:`\\log p(x)```, ``.. math::`` blocks, ``:func:`fit_mle```, ``:class:`~ppgen.nn.Root```.
This extension rewrites them, as the package is loaded, into what mkdocstrings renders: math for
arithmatex (``$...$``, ``$$...$$``), roles into cross-references (resolved from the docstring's own
scope outwards, as Sphinx does; left as code where the target is not on the site), and an
``Example:`` heading into ``Examples:``, so that each ``>>>`` line becomes a code block.
"""

from __future__ import annotations

import re

import griffe

MATH = re.compile(r":math:`([^`]+)`")
ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|obj|exc):`(~?)([^`]+)`")
BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
EXAMPLE = re.compile(r"^([ \t]*)Example:[ \t]*$", re.MULTILINE)


def _math_blocks(text: str) -> str:
    """Each ``.. math::`` directive as a ``$$`` block at the directive's indentation."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        match = BLOCK.match(lines[i])
        if match is None:
            out.append(lines[i])
            i += 1
            continue
        indent, body = match["indent"], [match["first"]] if match["first"].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith(indent + " ")):
            if lines[i].strip():
                body.append(lines[i].strip())
            elif body:
                break
            i += 1
        out += ["", indent + "$$", *(indent + line for line in body), indent + "$$", ""]
    return "\n".join(out)


def _target(name: str, obj: griffe.Object) -> str:
    """The path of the object that `name` names, seen from `obj`; `name` itself if none."""
    package = obj.package
    scopes = [package] if name.startswith(package.name + ".") else []
    scope = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        scopes.append(scope)
        scope = scope.parent
    for scope in scopes:
        path = name.removeprefix(package.name + ".") if scope is package else name
        try:
            found = scope[path]
            return found.final_target.path if found.is_alias else found.path
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
    return name


def rewrite(text: str, obj: griffe.Object) -> str:
    """The docstring `text` of `obj` in the Markdown that mkdocstrings renders."""
    text = EXAMPLE.sub(r"\1Examples:", _math_blocks(text))
    text = MATH.sub(lambda m: f"${m[1].strip()}$", text)

    def reference(match: re.Match) -> str:
        short, name = match[1], match[2].strip()
        label = name.rsplit(".", 1)[-1] if short else name
        return f'<autoref identifier="{_target(name, obj)}" optional><code>{label}</code></autoref>'

    return ROLE.sub(reference, text)


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package (see the module's docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        """Rewrites the docstrings of `pkg` and of all its members, once it is loaded."""
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj)
            stack += [m for m in obj.members.values() if not m.is_alias]

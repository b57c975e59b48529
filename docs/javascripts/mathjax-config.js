// MathJax 2 (the offline copy of jupyter-server-mathjax, served with the site) reads this object
// when it starts: the math of arithmatex (\( \) and \[ \]) and, in the tutorials, the notebooks'
// own $ and $$ (their pages add those delimiters). Jupyter's copy ships the STIX-Web fonts.
window.MathJax = {
  config: ["TeX-AMS-MML_HTMLorMML-full.js"],
  jax: ["input/TeX", "output/HTML-CSS"],
  tex2jax: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  "HTML-CSS": { availableFonts: [], preferredFont: null, imageFont: null, webFont: "STIX-Web" },
  messageStyle: "none",
  showMathMenu: false,
};

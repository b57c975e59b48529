r"""The classic generative models of the course notes, one file per family."""

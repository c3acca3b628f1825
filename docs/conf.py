"""Sphinx configuration of fastbp's documentation (``make docs``).

The build is offline: no intersphinx inventories are fetched, and the theme
loads no remote assets at build time.  Warnings are errors
(``sphinx-build -W --keep-going``).
"""

import fastbp

project = "fastbp"
author = "The fastbp developers"
copyright = "The fastbp developers"
version = release = fastbp.__version__

extensions = [
    "sphinx.ext.autodoc",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
# Markdown pages: ``{role}`` syntax for cross-references, and heading anchors
# for links between pages.
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

# API reference from the numpydoc docstrings of the public names only.
# Each page lists the members it documents (no default ``:members:``).
autodoc_default_options = {}
autodoc_member_order = "bysource"
autodoc_typehints = "none"
# Private helpers (``_code``, ``_pack``, ...) never appear; numpydoc lists a
# class's public methods and attributes once, in the class entry.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# Offline build: nothing is fetched.
intersphinx_mapping = {}

html_theme = "pydata_sphinx_theme"
html_title = f"fastbp {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False
html_static_path = []

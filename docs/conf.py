"""Sphinx configuration for the fastbn documentation.

Build (warnings are errors):

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

import os
import sys

# Document the checkout this file belongs to, installed or not.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import fastbn  # noqa: E402

project = "fastbn"
author = "the fastbn developers"
copyright = "the fastbn developers"
version = release = fastbn.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# Build output, and generated tables only pulled into pages with {include}.
exclude_patterns = [
    "_build",
    "*-table.md",
    "demo-results.md",
]

#: Generated pages that are linked to, not in the toctree: the title and
#: ``orphan`` mark they lack are added when Sphinx reads them (the files
#: stay as the benchmark scripts wrote them, readable on GitHub too).
STANDALONE_PAGES = {
    "thread-sweep-16core": "Thread sweep on 16 cores",
}

myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

autodoc_typehints = "none"  # numpydoc sections carry the types
autodoc_preserve_defaults = True  # "dtype=np.float32", not "<class ...>"
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

html_theme = "pydata_sphinx_theme"
html_title = f"fastbn {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []


def _standalone_page(app, docname, source):
    title = STANDALONE_PAGES.get(docname)
    if title is not None:
        source[0] = f"---\norphan: true\n---\n\n# {title}\n\n" + source[0]


def setup(app):
    app.connect("source-read", _standalone_page)

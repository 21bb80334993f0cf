"""The one compiled part of actstore; everything else is in pyproject.toml.

query/_head_dot.c computes head DLA's dot products in one pass over the stored float16 with the GIL released
(query/head_dot.py). It is optional: where no C compiler is found the install goes on, and head_dot.py gives the
same values, bit for bit, with numpy (slower).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("actstore.query._head_dot", ["actstore/query/_head_dot.c"], optional=True)])

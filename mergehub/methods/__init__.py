"""Merge methods: pure tensor functions, each declared with its `MethodSpec` and listed by its mergekit name.

`spec` defines what a method declares; each method module holds a kernel and its spec
(the TIES family: configurations of the pipeline in `_ties_pipeline`); `registry` imports
them all and builds the read-only table once.
"""

from mergehub.methods.registry import all_methods, get_kernel, get_method, method_names
from mergehub.methods.spec import REQUIRED, MethodSpec, ParamSpec

__all__ = ["REQUIRED", "MethodSpec", "ParamSpec", "all_methods", "get_kernel", "get_method", "method_names"]

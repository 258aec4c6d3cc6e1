"""Merge methods: pure tensor functions, registered by their mergekit names."""

from mergehub.methods.registry import REQUIRED, MethodSpec, ParamSpec, all_methods, get_method, method_names

__all__ = ["REQUIRED", "MethodSpec", "ParamSpec", "all_methods", "get_method", "method_names"]

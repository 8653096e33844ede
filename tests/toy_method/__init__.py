"""A toy fifth method defined outside the package (docs/adding_a_method.md walks through it)."""

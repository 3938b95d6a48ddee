"""The physics, pure and solver-free: layouts and rank maps, what each engine does, exact bytes, seconds, fitted parameters.

Layer of the package (DESIGN.md, Layout): imports point down, cli -> outputs -> search -> model -> inputs -> units/errors."""

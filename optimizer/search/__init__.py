"""The rules, the CP-SAT model and its oracle, the optimality certificate, and the questions built on them (diagnosis, disaggregation, Pareto, fleets).

Layer of the package (DESIGN.md, Layout): imports point down, cli -> outputs -> search -> model -> inputs -> units/errors."""

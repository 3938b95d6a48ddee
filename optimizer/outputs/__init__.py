"""What the tool writes: JSON, tables and Markdown, engine command lines, and sweeps of many scenarios.

Layer of the package (DESIGN.md, Layout): imports point down, cli -> outputs -> search -> model -> inputs -> units/errors."""

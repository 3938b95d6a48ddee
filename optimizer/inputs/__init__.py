"""What users write: scenarios and fleets (frozen pydantic), their reading, the catalog and the JSON Schemas.

Layer of the package (DESIGN.md, Layout): imports point down, cli -> outputs -> search -> model -> inputs -> units/errors."""

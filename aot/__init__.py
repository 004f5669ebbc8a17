"""Build-time tooling: the spec table, the compile driver and the C code generator."""

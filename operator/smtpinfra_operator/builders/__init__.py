"""Pure builders: spec in, desired objects / config out. No I/O."""

"""Helpers every layer may use: they import nothing else of the package. Import the module you need
(`utils.devices`, `utils.defaults`, `utils.host_memory`); this `__init__` imports none, so light front-end code can
read the defaults without importing torch."""

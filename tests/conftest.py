pytest_plugins = ["tests.plugin_flux", "tests.plugin_compose"]

"""What a recipe is: the TOML schema, the plugin hooks that supply its components, the one table of
component kinds, and the plugin registry that finds and builds them."""

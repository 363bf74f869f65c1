"""unlearn_fast with the field's other attribution tools: scores in their layouts (exporters), K-FAC factors as
kronfluence keeps them (kronfluence), AbU as a dattri attributor (dattri). The top layer: it may import the attributor
and the methods; nothing in the package below it imports it. Each module imports its tool only where it needs it."""

"""Reading and writing models safely: loads with every input check, atomic saves, the overwrite guard."""

"""likeness's terminal interface (Textual). It drives the engine; the engine never imports it."""

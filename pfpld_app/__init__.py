"""The application layer: the `pfpld` command, the demo and the benchmark. It sits above the three library
packages (`pfpld` models/data/training, `convert`, `quant`) and is the only code that imports all of them;
the libraries never import it, and `pfpld` never imports `convert` or `quant`."""

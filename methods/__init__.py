"""Methods behind one fit/predict contract (``flag_bench.methods``)."""

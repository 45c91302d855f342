"""One pipeline above the core: plan a study, train or load each model, evaluate, publish.

The command line, the demo and the experiment runner all call it.
"""

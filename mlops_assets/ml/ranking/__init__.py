"""The ranking task: recommenders over user-item interactions, their metrics, their sweep and monitoring.

Pure logic (no Dagster). Every model here maps a user's history (the items they interacted with before the
day a list is served) to scores over its catalogue, so a model is judged, served and compared on fresh
histories without being refit: a "never retrained" model still sees what a user did yesterday, it only
lacks what it would have learnt from it (new items, new co-occurrences). What is only counted, not learnt
(popularity over a window, a blend's recent shares) is counted on the day served.
"""

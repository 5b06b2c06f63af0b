"""Work spread over processes, devices and hosts: a run's folds (``folds``), a prediction's shards
(``shards``). Every process writes into one shared folder whose markers say what is done, so nothing
here schedules more than the next fold: the engines are the ones the field runs on (subprocesses on one
host, submitit for clusters)."""

"""Starting workers where they run: this machine, hosts over ssh, a SLURM allocation.

``contract`` (the worker's command line and exit codes, defined once), ``local`` (worker
processes here, and worker groups), ``ssh`` and ``slurm`` (the commands that start them
elsewhere), ``groups`` (launched groups and every source of workers of a pool), ``hosts``
(host specs, hostfiles, batch allocations).
"""

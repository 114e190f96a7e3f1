"""What the hub tells its operators about itself: Prometheus metrics (``metrics.py``) and the
JSON counters of ``/api/stats`` (``stats.py``), both read from the hub's own state when asked;
the ``$SYS/broker/...`` topics (``systopics.py``) and who may read them (``sysaccess.py``);
the one seam every API request passes once answered (``requests.py``); the audit log
(``audit.py``); the log pipeline with its text and JSON formats (``logs.py``); the bucket
counts behind every latency histogram (``histogram.py``); what the broker holds right now
(``figures.py``); and the hub's parts these read (``sources.py``).

Nothing here runs per message except ``histogram.Buckets.observe``; everything else reads
counters the hub keeps anyway, at scrape time (README, *Monitoring*).
This package's ``__init__`` imports nothing: ``broker/`` and ``store/`` use ``histogram.py``,
and the modules that read the broker import ``broker/``."""

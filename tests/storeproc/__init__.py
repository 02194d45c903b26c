"""Child processes for the store crash tests (tests/test_store_crash.py and
tests/test_store_queue_mqtt.py): each script is run with ``sys.executable``
and reports on stdout, one line per confirmed step; ``Child`` runs one."""

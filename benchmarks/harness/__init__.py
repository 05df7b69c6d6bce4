"""Load-test harness for keygate: nginx mock upstream, wrk load, /proc CPU and RSS accounting."""

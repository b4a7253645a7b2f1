"""The admission webhook (`changegate serve`): the HTTP server (app), the state it decides on
(cache: list+watch through watch, or a directory), the bounded read-through, TLS reload and
its Prometheus instruments. It decides nothing itself: every answer is `core.decide()`'s.
"""

"""Watch jobs: what a party hands a watcher so its swap finishes while it is offline.

``models`` holds the persisted rows and their state names, ``presign`` the party's side
(pre-signed Bitcoin claim and refund ladders), ``jobs`` the watcher's intake (the job
format and its audit against the chains).  The daemon is ``relayers.watcher``.
"""

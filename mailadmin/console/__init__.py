"""The console: IIS Manager's SMTP snap-in as server-rendered pages.

One module per part of the tree: ``machine`` (the computer node, Dashboard, the live
state feed), ``servers`` (a server's node and Start/Stop/Pause/Delete), ``sheet`` (its
Properties), ``create`` (the wizards), ``domains``, ``sessions``, ``users`` and ``tools``
(Test relay, audit log, export/import). Views parse, call a service, render.
"""

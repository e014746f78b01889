"""The worker's services; `hyrex_like.dispatcher.Dispatcher` wires them and runs the loop.

Nothing is imported here: an executor process imports only what it needs of this package.
"""

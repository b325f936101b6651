"""Transports: how a runner process is started and killed on a target.

Every transport speaks the same JSON-lines protocol over the child's stdin/stdout; they
differ only in the argv prefix and in how a runner is killed.
"""

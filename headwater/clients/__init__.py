"""Client settings shared by a source and a sink of the same system (Kafka, SQL, HTTP): connection options,
credentials (masked, never logged or checkpointed) and the small helpers both sides need.

This layer sits below ``headwater.sources`` and ``headwater.sinks`` (which may import it) and above
``headwater.core``; it imports nothing else of Headwater. One module per system.
"""

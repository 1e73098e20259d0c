"""Transport and storage: event schemas, the producer with its disk spool, the embedded broker,
the DuckDB store and the controller's sink that moves events from Kafka into DuckDB."""

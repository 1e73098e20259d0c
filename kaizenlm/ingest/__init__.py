"""Transport and storage: Kafka topics, the producer with its disk spool, the embedded broker,
the DuckDB store schema and the controller's sink that moves events from Kafka into DuckDB."""

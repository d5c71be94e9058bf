"""Copying a telemetry lake into a SQL database, in the contract's SQL layout.

For tests, and for users moving their telemetry to a warehouse: one table per
contract table, partition keys as ordinary columns, ``serving_samples`` and
``training_data`` as single tables whose feature columns are the union over
models, ``training_runs.partitions`` as a JSON array string, and artifacts
rewritten as absolute paths (or URLs). The copy is one transaction: on any
error nothing is left behind. PostgreSQL (psycopg2) is loaded with ``COPY``,
other databases with batched INSERTs.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import sqlalchemy as sa

from hawkeye_dagster.contract import TABLES, Kind, TableSpec
from hawkeye_dagster.errors import ContractError
from hawkeye_dagster.lake.conform import unified_schema
from hawkeye_dagster.lake.reader import TelemetryReader

#: rows per INSERT batch (where COPY is not available)
BATCH_ROWS = 5000

_SQL_TYPES = {
    Kind.TIMESTAMP: sa.DateTime(timezone=True),
    Kind.STRING: sa.Text(),
    Kind.FLOAT64: sa.Double(),
    Kind.FLOAT32: sa.REAL(),
    Kind.INT32: sa.Integer(),
    Kind.INT64: sa.BigInteger(),
    Kind.STRING_LIST: sa.Text(),
}


def _sql_type(spec: TableSpec, field: pa.Field) -> sa.types.TypeEngine:
    if field.name in spec.column_names:
        return _SQL_TYPES[spec.column(field.name).kind]
    t = field.type
    for test, sql_type in ((pa.types.is_float32, sa.REAL()),
                           (pa.types.is_floating, sa.Double()),
                           (pa.types.is_integer, sa.BigInteger()),
                           (pa.types.is_boolean, sa.Boolean()),
                           (pa.types.is_timestamp, sa.DateTime(timezone=True)),
                           (pa.types.is_string, sa.Text())):
        if test(t):
            return sql_type
    raise ContractError(f"no SQL type for {t}", table=spec.name, column=field.name)


def copy_lake_to_sql(lake: TelemetryReader, url: str, *, schema: str | None = None) -> None:
    """Copy every table of ``lake`` into new tables of the database at ``url`` (in ``schema``).

    Fails, copying nothing, if a table already exists there or a name does not
    fit the database's identifiers.
    """
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        _transactional_ddl(engine)
    metadata = sa.MetaData(schema=schema)
    present = sorted(lake.tables())
    tables = {}
    for name in present:
        spec = TABLES[name]
        stored = unified_schema(spec, [(p.location, p.schema) for p in lake.parts(name)
                                       if p.schema is not None])
        fields = [stored.field(n) if n in stored.names else pa.field(n, pa.null())
                  for n in dict.fromkeys([*spec.column_names, *stored.names])]
        for field in fields:
            _check_identifier(engine, spec, field.name)
        tables[name] = sa.Table(name, metadata, *(sa.Column(f.name, _sql_type(spec, f))
                                                  for f in fields))
    with engine.begin() as conn:
        if schema is not None and engine.dialect.name != "sqlite":
            conn.execute(sa.schema.CreateSchema(schema, if_not_exists=True))
        metadata.create_all(conn, checkfirst=False)
        for name in present:
            for piece in _pieces(lake, TABLES[name]):
                _insert(conn, tables[name], piece)
    engine.dispose()


def _transactional_ddl(engine: sa.Engine) -> None:
    """Make SQLite's ``CREATE TABLE`` part of the copy's transaction.

    pysqlite begins transactions itself, only before DML, so DDL would commit on its own.
    SQLAlchemy's documented recipe hands transaction control to SQLAlchemy instead: the
    driver's own BEGIN is disabled (``isolation_level = None``) and ``BEGIN`` is emitted when
    SQLAlchemy begins.
    """
    @sa.event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN")


def _check_identifier(engine: sa.Engine, spec: TableSpec, name: str) -> None:
    limit = engine.dialect.max_identifier_length
    if limit and len(name.encode()) > limit:
        raise ContractError(f"name longer than the database's {limit}-byte identifiers",
                            table=spec.name, column=name)


def _pieces(lake: TelemetryReader, spec: TableSpec):
    """The table in the SQL layout, one model (or dataset) at a time for feature tables."""
    if spec.feature_columns:
        key = spec.partition_keys[0]
        ids = pc.unique(lake.read_arrow(spec.name, columns=[key])[key]).to_pylist()
        pieces = (lake.read_arrow(spec.name, equals={key: i}) for i in ids)
    else:
        pieces = [lake.read_arrow(spec.name)]
    for piece in pieces:
        yield _sql_layout(lake, spec, piece)


def _insert(conn: sa.Connection, table: sa.Table, piece: pa.Table) -> None:
    """Insert rows: PostgreSQL (psycopg2) through ``COPY ... FROM STDIN``, others in batches."""
    dialect = conn.dialect
    if dialect.name != "postgresql" or dialect.driver != "psycopg2":
        # An empty parameter list would make SQLAlchemy run the INSERT once with no
        # values, which adds a row of defaults (NULLs): empty batches are skipped.
        for batch in piece.to_batches(BATCH_ROWS):
            if batch.num_rows:
                conn.execute(table.insert(), batch.to_pylist())
        return
    buffer = io.BytesIO()
    csv.write_csv(piece, buffer, csv.WriteOptions(include_header=False))
    buffer.seek(0)
    quote = dialect.identifier_preparer
    columns = ", ".join(quote.quote(c) for c in piece.column_names)
    statement = f"COPY {quote.format_table(table)} ({columns}) FROM STDIN WITH (FORMAT csv)"
    with conn.connection.dbapi_connection.cursor() as cursor:
        cursor.copy_expert(statement, buffer)


def _sql_layout(lake: TelemetryReader, spec: TableSpec, piece: pa.Table) -> pa.Table:
    """Artifacts as absolute paths or URLs, partition lists as JSON array strings."""
    rewrites = {"snapshots": ("artifact", lake.resolve_artifact),
                "training_runs": ("partitions", json.dumps)}
    if spec.name not in rewrites or rewrites[spec.name][0] not in piece.column_names:
        return piece
    column, rewrite = rewrites[spec.name]
    values = [None if v is None else rewrite(v) for v in piece[column].to_pylist()]
    return piece.set_column(piece.schema.get_field_index(column), column,
                            pa.array(values, pa.string()))

-- pgflow_trio schema 1: a function reporting this schema's version, so tools can check it without our table.
CREATE OR REPLACE FUNCTION pgflow_trio.schema_version()
RETURNS integer
LANGUAGE sql
STABLE
SET search_path = ''
AS $body$
  SELECT count(*)::integer FROM pgflow_trio.migrations WHERE name LIKE 'pgflow_trio/%'
$body$;

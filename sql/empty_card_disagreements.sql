CREATE OR REPLACE VIEW {name} AS SELECT NULL::VARCHAR AS repo_id, NULL::VARCHAR AS declared_base, NULL::VARCHAR AS recovered_parent, NULL::BOOLEAN AS declared_in_same_tree WHERE false;

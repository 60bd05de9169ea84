SELECT name, tree_id, kind, size, n_documented, n_undocumented, expert_status,
       coalesce(expert_note, '') AS expert_note
FROM trees ORDER BY size DESC;

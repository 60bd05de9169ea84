SELECT tree_id, root_repo, kind, size, n_documented, n_undocumented FROM trees ORDER BY size DESC;

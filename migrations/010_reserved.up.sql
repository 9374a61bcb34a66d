-- Placeholder: migration 010 belongs to another branch (stresscore). The migrator needs
-- versions without gaps, so this empty file stands in for it on branch storm until the two
-- are merged; delete it at the merge.
SELECT 1;

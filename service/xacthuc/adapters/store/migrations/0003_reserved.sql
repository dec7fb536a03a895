-- Reserved: the 'state' branch brings migration 0003 (issue 10); this file only keeps the
-- numbers without gaps until it merges, and is then replaced by it.
SELECT 1;

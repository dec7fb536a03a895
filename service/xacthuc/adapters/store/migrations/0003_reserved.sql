-- Reserved: the 'state' branch brings migrations 0002 and 0003 (issue 10); this file only
-- keeps the numbers without gaps until it merges, and is then replaced by them.
SELECT 1;

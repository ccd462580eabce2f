-- Near-dedup: LSH banding over MinHash signatures, candidate pairs checked against the
-- exact Jaccard similarity of their shingle sets, groups as connected components, and
-- one survivor a group, deterministically: a used prompt (earlier rounds) if the group
-- holds one, else the prompt with the most near-copies in it (so the others are copies
-- of what is kept, not only of each other), then the lowest doc (docs are numbered in
-- candidate_id order).
-- View: docs (doc INTEGER, used BOOLEAN, n_shingles INTEGER, sig UINTEGER[bands*rows],
--             shingles UBIGINT[]) — written by alma_data/near_dedup.py.
-- Parameters: $bands, $rows (signature = bands x rows hashes), $threshold (Jaccard of a
--             near-copy), $max_bucket (larger buckets are linked as a star).
-- Result: one row per doc: doc, grp (its group's survivor), verdict
--         (unique | near_duplicate | near_used_before | used).
WITH RECURSIVE
bands AS (
    -- two docs share a bucket when one band of their signatures is equal
    SELECT doc, b AS band, hash(list_slice(sig::UINTEGER[], b * $rows + 1, (b + 1) * $rows)) AS bucket
    FROM docs, range($bands) AS t(b)
    WHERE n_shingles > 0
),
shared AS (
    SELECT doc, band, bucket,
           count(*) OVER (PARTITION BY band, bucket) AS size,
           min(doc) OVER (PARTITION BY band, bucket) AS first_doc
    FROM bands
    WHERE (band, bucket) IN (SELECT band, bucket FROM bands GROUP BY ALL HAVING count(*) > 1)
),
candidate_pairs AS (
    SELECT DISTINCT x.doc AS a, y.doc AS b
    FROM shared x JOIN shared y ON x.band = y.band AND x.bucket = y.bucket AND x.doc < y.doc
    WHERE x.size <= $max_bucket OR x.doc = x.first_doc
),
edges AS (
    -- the exact check: near-copies are pairs at Jaccard >= $threshold, not LSH's guesses
    SELECT a, b FROM (
        SELECT p.a, p.b, len(list_intersect(x.shingles, y.shingles)) AS common,
               len(list_distinct(x.shingles)) AS nx, len(list_distinct(y.shingles)) AS ny
        FROM candidate_pairs p JOIN docs x ON x.doc = p.a JOIN docs y ON y.doc = p.b
    )
    WHERE common >= $threshold * (nx + ny - common)
),
links AS (SELECT a AS src, b AS dst FROM edges UNION ALL SELECT b, a FROM edges),
components(node, grp) USING KEY (node) AS (
    -- label propagation: every linked doc takes the lowest label among its neighbours
    SELECT src, src FROM links GROUP BY src
    UNION
    SELECT l.dst, min(c.grp)
    FROM components c JOIN links l ON c.node = l.src JOIN recurring.components r ON r.node = l.dst
    GROUP BY l.dst, r.grp
    HAVING min(c.grp) < r.grp
),
degree AS (SELECT src AS doc, count(*) AS degree FROM links GROUP BY src),
grouped AS (
    SELECT d.doc, d.used, coalesce(c.grp, d.doc) AS component, coalesce(g.degree, 0) AS degree
    FROM docs d LEFT JOIN components c ON c.node = d.doc LEFT JOIN degree g ON g.doc = d.doc
),
survivors AS (
    -- a used prompt if the group has one, else its most linked prompt, then its lowest doc
    SELECT component, first(doc ORDER BY used DESC, degree DESC, doc) AS grp, bool_or(used) AS has_used
    FROM grouped WHERE degree > 0 GROUP BY component
)
SELECT g.doc, coalesce(s.grp, g.doc) AS grp,
       CASE WHEN g.used THEN 'used'
            WHEN s.grp IS NULL OR s.grp = g.doc THEN 'unique'
            WHEN s.has_used THEN 'near_used_before'
            ELSE 'near_duplicate' END AS verdict
FROM grouped g LEFT JOIN survivors s USING (component)
ORDER BY g.doc

-- One line per round: prompts, responses, judge scores, best-of-n data, pairs and the
-- held-out mean score of the round's model (the paper's Figure 2 on our data).
-- Views: the run's tables over all rounds.
SELECT p.round,
       p.prompts,
       r.responses,
       r.mean_score,
       r.max_score,
       s.sft_rows,
       d.dpo_rows,
       e.heldout_mean_score
FROM (SELECT round, count(*) AS prompts FROM prompts WHERE split = 'train' GROUP BY round) p
LEFT JOIN (SELECT r.round, count(*) AS responses, avg(j.score) AS mean_score, max(j.score) AS max_score
           FROM responses r JOIN judgments j USING (response_id) GROUP BY r.round) r USING (round)
LEFT JOIN (SELECT round, count(*) AS sft_rows FROM sft GROUP BY round) s USING (round)
LEFT JOIN (SELECT round, count(*) AS dpo_rows FROM dpo GROUP BY round) d USING (round)
LEFT JOIN (SELECT round, avg(score) AS heldout_mean_score FROM eval GROUP BY round) e USING (round)
ORDER BY p.round

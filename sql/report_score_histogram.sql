-- The report's score_histogram figure: Share of responses in each one-point score bucket, per
-- round, with the round's responses (the n each bar's share is of).
select round,
  bucket,
  n * 1.0 / sum(n) over (partition by round) as share,
  sum(n) over (partition by round) as responses
from (select round, floor(score) as bucket, count(*) as n from judgments group by round, bucket)
order by round, bucket

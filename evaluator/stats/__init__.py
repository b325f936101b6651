"""The statistics every verdict rests on, in one place.

intervals   timed samples: order-statistic intervals for quantiles, bootstrap for the mean,
            the precision an adaptive loop stops on, intervals for ratios of medians
paired      quality on the same items: McNemar's exact test, the matched-proportions
            interval, the paired perplexity ratio, a mean over windows
sequential  the quality budget: planned looks, the group-sequential boundary, the
            three-way non-inferiority verdict and how many more items would decide it
"""

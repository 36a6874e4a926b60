"""Reading results into figures: plot data, plots, the HTML report, cross-hardware tables."""

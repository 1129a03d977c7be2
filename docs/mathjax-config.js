/* MathJax 2 settings for the course site, loaded as [MathJax]/config/qcourse.js after the combined
   configuration (mkdocs.yml: custom_mathjax_url ...?config=TeX-AMS-MML_HTMLorMML-full,Safe,qcourse).
   The jupyter-server-mathjax package ships only the STIX-Web web fonts (the classic Jupyter notebook's
   choice), so MathJax must use those and never look for the TeX fonts it does not have. */
MathJax.Hub.Config({
  "HTML-CSS": {
    availableFonts: [],
    preferredFont: null,
    webFont: "STIX-Web",
    imageFont: null,
    linebreaks: { automatic: true }
  }
});
MathJax.Ajax.loadComplete("[MathJax]/config/qcourse.js");

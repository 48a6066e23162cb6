/* The ipywidgets HTML manager 1.0.x typesets widget labels with MathJax 2's
   MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); MathJax 3 has no Hub. This file is loaded
   (deferred, after MathJax 3) on pages with widgets only, by book/_ext/seqbook.py. */
(function () {
  "use strict";
  var mj = window.MathJax;
  if (!mj || mj.Hub || !mj.startup) {
    return; // no MathJax 3 on this page (the manager then skips typesetting), or a real Hub
  }
  mj.Hub = {
    Queue: function () {
      Array.prototype.forEach.call(arguments, function (job) {
        if (Array.isArray(job) && job[0] === "Typeset") {
          var element = job[2];
          mj.startup.promise = mj.startup.promise.then(function () {
            return mj.typesetPromise(element ? [element] : undefined);
          });
        }
      });
    },
  };
})();

// ReDoc 2.5.4 draws the logo of its "API docs by Redocly" link from cdn.redoc.ly and has no
// option to turn it off; this loads before ReDoc and gives that image an empty picture
// instead (ReDoc sets an image's `src` property), so the page sends no request elsewhere.
(function () {
  "use strict";
  var remote = "https://cdn.redoc.ly/redoc/logo-mini.svg";
  var empty = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw==";
  var src = Object.getOwnPropertyDescriptor(HTMLImageElement.prototype, "src");
  Object.defineProperty(HTMLImageElement.prototype, "src", {
    configurable: true,
    enumerable: src.enumerable,
    get: src.get,
    set: function (value) {
      src.set.call(this, String(value) === remote ? empty : value);
    },
  });
})();

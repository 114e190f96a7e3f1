"""Topic categories (reference §2.4): CreateProductTopic, QueryProductTopic, UpdateProductTopic,
DeleteProductTopic; and the cached per-product list used for authorisation."""

from __future__ import annotations

import time

from . import errors as e
from ._base import (
    RegistryBase,
    _categories,
    _category_exists,
    _exists,
)
from .errors import (
    ConflictError,
    QuotaExceededError,
)
from .models import (
    Operation,
    TopicCategory,
)
from .validation import (
    check_description,
    check_operation,
    check_topic_short_name,
)


class TopicsMixin(RegistryBase):
    """Topic category operations."""

    def create_topic_category(
        self,
        account_id: str,
        product_key: str | None,
        topic_short_name: str | None,
        operation: Operation | str | None,
        *,
        description: str | None = None,
        instance_id: str | None = None,
    ) -> TopicCategory:
        """CreateProductTopic (reference §2.4). Returns the category; its ``id`` is the
        TopicId. At most 50 per product, the three defaults included."""
        op = check_operation(operation)
        desc = check_description(description)
        now = self._clock()
        with self.store.write() as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            short = check_topic_short_name(topic_short_name, op, product.product_key)
            if _category_exists(conn, product.product_key, short, None):
                raise ConflictError(
                    e.TOPIC_ALREADY_FOUND, "The topic category name already exists."
                )
            count = conn.execute(
                "SELECT COUNT(*) FROM topic_categories WHERE product_key = ?",
                (product.product_key,),
            ).fetchone()[0]
            if count >= self.max_topic_categories_per_product:
                raise QuotaExceededError(
                    e.TOPIC_TEMPLATE_COUNT_EXCEED_MAX,
                    f"The product already has {count} topic categories, the maximum.",
                )
            cursor = conn.execute(
                "INSERT INTO topic_categories (product_key, short_name, operation, "
                "description, created_at) VALUES (?, ?, ?, ?, ?)",
                (product.product_key, short, op.value, desc, now),
            )
            self._category_cache.pop(product.product_key, None)
            return TopicCategory(int(cursor.lastrowid or 0), product.product_key, short, op, desc)

    def list_topic_categories(
        self, account_id: str, product_key: str | None, *, instance_id: str | None = None
    ) -> tuple[TopicCategory, ...]:
        """QueryProductTopic, in creation order."""
        with self.store.read() as conn:
            product = self._product(conn, account_id, instance_id, product_key)
            return _categories(conn, product.product_key)

    def get_topic_category(
        self, account_id: str, topic_id: int | str | None, *, instance_id: str | None = None
    ) -> TopicCategory:
        with self.store.read() as conn:
            return self._category(conn, account_id, instance_id, topic_id)

    def update_topic_category(
        self,
        account_id: str,
        topic_id: int | str | None,
        topic_short_name: str | None,
        operation: Operation | str | None,
        *,
        description: str | None = None,
        instance_id: str | None = None,
    ) -> TopicCategory:
        """UpdateProductTopic (reference §2.4): TopicShortName and Operation are required;
        Desc is kept when None."""
        op = check_operation(operation)
        desc = None if description is None else check_description(description)
        with self.store.write() as conn:
            category = self._category(conn, account_id, instance_id, topic_id)
            short = check_topic_short_name(topic_short_name, op, category.product_key)
            if _category_exists(conn, category.product_key, short, category.id):
                raise ConflictError(
                    e.TOPIC_ALREADY_FOUND, "The topic category name already exists."
                )
            conn.execute(
                "UPDATE topic_categories SET short_name = ?, operation = ?, "
                "description = COALESCE(?, description) WHERE id = ?",
                (short, op.value, desc, category.id),
            )
            self._category_cache.pop(category.product_key, None)
            return self._category(conn, account_id, instance_id, category.id)

    def delete_topic_category(
        self, account_id: str, topic_id: int | str | None, *, instance_id: str | None = None
    ) -> TopicCategory:
        """DeleteProductTopic. Returns the deleted category."""
        with self.store.write() as conn:
            category = self._category(conn, account_id, instance_id, topic_id)
            conn.execute("DELETE FROM topic_categories WHERE id = ?", (category.id,))
            self._category_cache.pop(category.product_key, None)
        return category

    def topic_categories_for_product(self, product_key: str) -> tuple[TopicCategory, ...]:
        """The product's topic categories for authorisation, cached until they change.
        Unknown products have none."""
        now = time.monotonic()
        cached = self._category_cache.get(product_key)
        if cached is not None and now - cached[0] < self.cache_ttl_s:
            return cached[1]
        with self.store.read() as conn:
            categories = _categories(conn, product_key)
            if _exists(conn, "products", "product_key", product_key):
                if len(self._category_cache) >= _CACHE_LIMIT:
                    self._category_cache.clear()
                self._category_cache[product_key] = (now, categories)
        return categories


_CACHE_LIMIT = 100_000
